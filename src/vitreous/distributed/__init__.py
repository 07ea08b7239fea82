"""Running one command as several processes (``torchrun``): ranks, particle shards, all-reduce."""
