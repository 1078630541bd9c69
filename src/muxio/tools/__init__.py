"""Tools that measure muxio against itself and against other server designs.

They live beside the library rather than in a separate project so that the
numbers in the README can be reproduced with nothing but `pip install muxio[bench]`.
"""
