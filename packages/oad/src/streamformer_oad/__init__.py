"""Online action detection on StreamFormer features (MAT head, THUMOS/TVSeries metrics)."""
