"""What runs a job: settings read from the config, start-up checks, the workdir and its lock, checkpoints, metrics, memory planning and the end-of-run report."""
