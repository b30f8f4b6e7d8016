"""The AudioLDM2 text-to-audio pipeline, whole-snapshot conversion and a tiny in-process pipeline."""
