"""SentencePiece tokenizers and the per-token byte tables that val_bpb is counted with."""
