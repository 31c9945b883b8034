"""corruption"""
