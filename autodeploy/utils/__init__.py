"""Small cross-cutting helpers: logging, error types, name suggestions."""
