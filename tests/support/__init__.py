"""Test support: a real MQTT broker in a subprocess, an MQTT probe client and deadline-based waits."""
