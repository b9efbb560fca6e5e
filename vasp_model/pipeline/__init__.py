"""The nightly pipeline: the plan of one date, its stages and the task callables the DAG wires."""
