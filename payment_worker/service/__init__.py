"""The pipeline that turns one command record into its effects, and the ports it needs."""
