"""MQTT side of the gateway: broker files (password file, ACL, mosquitto.conf) and clients."""
