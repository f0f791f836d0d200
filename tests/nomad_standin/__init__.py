"""A stand-in Nomad HTTP API for the tests (see `server`), and `Cluster`: the Nomad the
tests run against, the stand-in or a real one (``nomad agent -dev``)."""
