"""Scheduling: the policy interface (`view`, `policy`), the shipped policies (fcfs, priority,
tier), the step-time model, and the simulator that runs them on a synthetic clock.

Plain Python over plain data: no torch, so a policy runs unchanged inside the real engine, the
simulator and the planner."""
