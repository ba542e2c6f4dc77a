"""The dataset: what a dataset folder holds, safe decoding, the training dataset and its cache, curation, quarantine, statistics, the demo set."""
