"""Web pages served by `slmflow ui`: plain HTML/CSS/JS from the standard library's HTTP server.

Why no framework and no CDN: the view must work offline, start instantly and add no
dependency; the pages are small and the data comes from the tracing views as JSON.
"""
