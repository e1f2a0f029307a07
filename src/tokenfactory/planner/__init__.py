"""The planner: what a machine can earn serving a model at the shipped tiers' promises.

A step-time model per (model, hardware) from the roofline and fitted overheads, the frontier
of throughput against per-user speed it implies, the tier mix that earns most on it, and the
fleet a demand needs; every plan is checked on the real scheduling policies in the simulator.
"""
