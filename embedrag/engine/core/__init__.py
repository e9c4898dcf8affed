"""What every layer uses: domain errors and interruption-safe writes."""
