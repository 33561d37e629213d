"""Data generation: captioned images -> events -> descriptions and hard negatives -> WebDataset shards."""
