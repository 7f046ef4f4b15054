"""The recognizer: IResNet backbone, margin heads, training loop, embeddings."""
