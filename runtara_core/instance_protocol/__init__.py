"""The instance protocol (DESIGN section 3): what an instance process may ask the core.

``decisions`` holds the pure rules (sleep records, hibernation, register history), ``binding``
the per-connection state, ``handlers`` the operations over persistence, ``signal_push`` the
registry that pushes signals to connected instances.
"""
