"""Files in and out: images, colours, visual records, atomic writes."""
