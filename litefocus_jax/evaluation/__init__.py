"""Quality metrics of the AudioLDM line (audioldm_eval 0.0.3) in JAX: VGGish/PANNs/CLAP features, FAD, FD, KL, IS, KID, CLAP score, and the evaluate driver."""
