"""Events: recording, searching, retention and refused-call aggregation.

The bottom domain: every other domain records its events here, in its own transaction, so
this package builds on the store and small utilities only. What reacts to events (the
automations) is ``flowlink.automations``.
"""
