"""Runs the pack on a real ComfyUI in-process: host boot, tiny seeded models, prompt execution.

Shared by the tests, the main job (scripts/run_workflow.py) and bench/. Not loaded by ComfyUI.
"""
