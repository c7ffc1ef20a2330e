"""`edgedl debug`: find where a model goes wrong or slow. ``speed``: why an int8 model is (not) faster than its
float original, per operator, with advice for this CPU."""
