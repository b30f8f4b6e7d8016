"""Tools on top of the pipelines: batch generation, the demo, the benchmark harness, the PyTorch peers."""
