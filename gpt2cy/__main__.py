"""`python -m gpt2cy` is the `gpt2cy` command."""
import sys

from .cli.main import main

sys.exit(main())
