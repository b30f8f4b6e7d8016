"""Feature front ends: waveforms to the inputs the models take (log-mel for the VAE, ...)."""
