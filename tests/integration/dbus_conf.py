"""Configurations for private dbus-daemons in tests: the integration tests' buses, the
unit-file checks and the guest's hot-swap checks all start one from here."""

# The default context of Debian's system bus (/usr/share/dbus-1/system.conf): nobody owns a
# name or calls a method unless a policy file (efused's, included after it) says so.
SYSTEM_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"""

# Anyone may do anything: efused's own uid check is then the only guard.
OPEN_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
"""


def bus_config(sock, rules, include=None):
    """A system-type bus listening on the unix socket `sock` with these policy rules, and
    `include` (a policy file such as efused's org.efuse.Manager1.conf) after them."""
    extra = f"  <include>{include}</include>\n" if include else ""
    return ('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            f"<busconfig>\n  <type>system</type>\n  <listen>unix:path={sock}</listen>\n"
            f"  <auth>EXTERNAL</auth>\n{rules}{extra}</busconfig>\n")
