"""Measurement, above the builder: `timing` (the one timing protocol) and `calibrate`
(`nas calibrate`: time networks on this device and fit the latency profile `nas.cost.latency`
prices with). `nas.cost` stays pure; everything here may import torch and `nas.blocks`."""
