"""File formats: a model directory's layout (layout.py), TensorFlow tensor bundles (tfbundle.py and its writer),
safetensors (safetensors.py), the TF/HF tensor names (names.py), stored weight types (dtypes.py) and the loader
over them (checkpoint.py). Paths in, numpy views out: nothing here downloads or imports gpt2cy.hub."""
