"""notebook-http: a notebook's annotated cells served as an HTTP API by a pool of kernels.

``raygate serve --api notebook-http --seed-uri NOTEBOOK --prespawn-count N`` (the option
names Jupyter Kernel Gateway uses). The parts, each with one job:

- :mod:`.settings`: the mode's declared settings;
- :mod:`.notebook` (pure): reading the seed notebook and finding its endpoints, response
  cells and seed cells;
- :mod:`.request` (pure): the ``REQUEST`` value a cell sees, and matching paths;
- :mod:`.swagger` (pure): the ``/_api/spec/swagger.json`` document;
- :mod:`.execute`: running code on one kernel and collecting what it printed;
- :mod:`.pool`: the N kernels, one request at a time each, a bounded queue beyond;
- :mod:`.handlers`: the Starlette routes.
"""
