"""Network servers built on dslo's request, engines and per-image step (front ends, like the
command line and the app): :mod:`dslo.servers.label_studio`, the Label Studio ML backend."""
