"""Tools run by hand: reproduction, export and the device driver (scripts/device/)."""
