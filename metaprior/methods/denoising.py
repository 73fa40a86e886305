"""(issue 7, in progress)"""
