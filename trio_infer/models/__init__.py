"""Models: the blocking model protocol, the backends that implement it, loading and calibration.

May import the core (jobs, formation) and the settings; never the HTTP or runtime layers.
"""
