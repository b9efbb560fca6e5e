"""Everything that recommends through one interface: closed-form EASE, popularity and the trained VASP bundle."""
