"""pgolf: the Parameter Golf toolkit.

Data, tokenizer, model, Muon training, quantized artifacts and exact val_bpb, as an importable
library (``pgolf.*``) and a command-line tool (``pgolf ...``). Importing the package has no side
effects; the heavy modules are imported only where used.
"""

__version__ = "0.1.0"
