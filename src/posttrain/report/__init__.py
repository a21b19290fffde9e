"""Run reports: one self-contained HTML file per run (`posttrain report`)."""
