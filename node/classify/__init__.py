"""Series classification: volume -> body part, imaging axis, IV contrast (image model, metadata prior)."""
