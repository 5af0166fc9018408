"""LIIF implicit decoders: the local implicit image function, its encoders, and the released checkpoint layouts."""
