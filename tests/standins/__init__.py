"""Stand-ins for cluster servers that cannot run on a test machine.

Each speaks the real REST API of the server it stands in for (the paths, bodies and
status codes the official clients use) and really runs what it is asked to run as a local
process, so raygate's launchers are exercised end to end. What they leave out is said in
each module's docstring.
"""
