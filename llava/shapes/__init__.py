"""Procedural visual QA: scenes of coloured shapes on a grid, questions whose answers need image regions."""
