"""Reading datasets (sources, layouts) and writing results (shards, manifest)."""
