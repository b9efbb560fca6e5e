"""Foundation: typed settings from env/flags, default locations, the model/training configs and presets."""
