"""The nightly VASP recommender: core → data → nn → evaluation → recommenders → train → mlops → pipeline → cli."""
