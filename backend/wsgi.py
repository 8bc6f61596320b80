"""gunicorn entry point: ``gunicorn backend.wsgi:app`` (no model is loaded, and CUDA is not
touched, until a worker's first request)."""
from .api import create_app

app = create_app()
