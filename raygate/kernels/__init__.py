"""The gateway's kernels: the table (:mod:`.registry`), who may start what (:mod:`.admission`,
:mod:`.caps`), the warm pool (:mod:`.pool`), and one entry of the table (:mod:`.kernel`)."""
