"""The pure core: values that flow between stages, and the judgement made of them.

Values in, values out, time passed in: nothing here touches a socket, a file or a clock.
"""
