"""The user contract, at the bottom of the layers: what a pipeline's own code subclasses, raises and sets.

    functions   the function base classes (MapFunction, SinkFunction, ...) and their lifecycle hooks
    signals     StopSignal, the end-of-stream marker every channel carries once
    service     BaseService and the specs of registered services
    errors      the whole exception tree (ProcflowError and below)
    config      the frozen, typed Config: every job option, each default stated once
    enums       job statuses, operator kinds and control requests

Everything above imports from here (graph, runtime, backends, api); this package imports nothing of
procflow's outside itself, so user code and tools can use it without starting or loading a backend.
"""
