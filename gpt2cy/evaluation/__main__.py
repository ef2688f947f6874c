"""`python -m gpt2cy.evaluation ...`: lm_eval's command line with the "gpt2cy" model registered."""
import sys

from . import GPT2CyLM  # noqa: F401  (registers "gpt2cy")


def main() -> None:
    from lm_eval.__main__ import cli_evaluate
    sys.argv[0] = "python -m gpt2cy.evaluation"
    cli_evaluate()


if __name__ == "__main__":
    main()
