"""Pipeline stages (train, export, inspect, ...). Each is a library call the thin CLI makes."""
