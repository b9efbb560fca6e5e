"""The nightly VASP recommender: core → data → nn → recommenders → evaluation → train → mlops → pipeline → cli."""
