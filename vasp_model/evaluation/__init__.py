"""The vae_cf evaluation protocol: top-k metrics and scoring recommenders on held-out users."""
